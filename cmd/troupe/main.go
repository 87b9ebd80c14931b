// Command troupe runs a Troupe node: layouts of filter and model actors
// behind the Agent's worker API and an OpenAI-compatible one, in a
// cluster. It is the app package with the built-in kinds linked in; a
// program that adds kinds of its own does the same (see examples/customkind).
package main

import (
	_ "github.com/troupe-llm/troupe/actors/chaos"
	_ "github.com/troupe-llm/troupe/actors/command"
	_ "github.com/troupe-llm/troupe/actors/dummy"
	_ "github.com/troupe-llm/troupe/actors/kuwa"
	_ "github.com/troupe-llm/troupe/actors/openai"
	_ "github.com/troupe-llm/troupe/actors/opencc"
	_ "github.com/troupe-llm/troupe/actors/reflect"
	"github.com/troupe-llm/troupe/app"
)

func main() { app.Main() }
