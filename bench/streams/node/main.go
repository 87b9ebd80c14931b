// Command node is troupe with one more model kind, benchclock, whose
// chunks carry the time they were emitted: the node bench/streams measures.
package main

import (
	_ "github.com/troupe-llm/troupe/actors/command"
	_ "github.com/troupe-llm/troupe/actors/dummy"
	_ "github.com/troupe-llm/troupe/actors/kuwa"
	_ "github.com/troupe-llm/troupe/actors/openai"
	_ "github.com/troupe-llm/troupe/actors/opencc"
	_ "github.com/troupe-llm/troupe/actors/reflect"
	"github.com/troupe-llm/troupe/app"

	_ "github.com/troupe-llm/troupe/bench/streams/clock"
)

func main() { app.Main() }
