// Command customtroupe is a troupe binary with a kind of its own: the
// built-in kinds it wants, plus the shout filter of this example. Build it
// with `go build ./examples/customkind` and run it with
// `LAYOUT_CONFIG=examples/customkind/layout.yaml ./customkind`.
package main

import (
	_ "github.com/troupe-llm/troupe/actors/dummy"
	_ "github.com/troupe-llm/troupe/actors/reflect"
	"github.com/troupe-llm/troupe/app"

	_ "github.com/troupe-llm/troupe/examples/customkind/shout"
)

func main() { app.Main() }
