// Package opencc converts between Simplified and Traditional Chinese with
// the output of the reference OpenCC (the C++ library, 1.1.6 as Debian ships
// it), on whole texts and on streams cut anywhere.
//
// A conversion works as OpenCC's does: the text is first cut into segments
// by longest match with a phrase dictionary, runs of text that match nothing
// forming one segment each; then every stage of the config's chain rewrites
// each segment on its own, by longest match with its group of dictionaries,
// where the first dictionary with any match wins. So a later stage (Taiwan
// phrases, say) never matches across the edge of a phrase the first one
// found.
//
// The dictionaries are the ones of github.com/longbridgeapp/opencc, corrected
// to equal the reference's and embedded (see internal/gendict); the library
// itself is not imported. Load builds each config once per process and
// shares dictionaries between configs.
package opencc
