// Package actors holds Troupe's message protocol, the Model and Filter
// interfaces that kinds implement, the registry of kinds, and the generic
// protoactor-go actors that host them: a model host that keeps its mailbox
// free while generating, filter hosts for the history and the output stream,
// and the pipeline that supervises them.
//
// It knows nothing of HTTP, layout files or cluster membership.
package actors
