package app

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/troupe-llm/troupe/actors"
	"github.com/troupe-llm/troupe/gateway"
	"github.com/troupe-llm/troupe/layout"
)

// errLayoutInvalid is what `troupe layout check` returns for a file with
// mistakes, after printing them: the exit status says it, the messages are
// already out.
var errLayoutInvalid = errors.New("the layout file has errors")

// layoutCommand runs `troupe layout check FILE` and `troupe layout graph
// [--format dot|mermaid] FILE`.
func layoutCommand(args []string, stdout, stderr io.Writer) error {
	usage := "usage: troupe layout check FILE | troupe layout graph [--format dot|mermaid] FILE"
	if len(args) == 0 {
		return errors.New(usage)
	}
	fs := flag.NewFlagSet("troupe layout "+args[0], flag.ContinueOnError)
	fs.SetOutput(stderr)
	format := fs.String("format", layout.FormatDOT, "graph format: dot or mermaid")
	name := fs.String("llm-name", "Unnamed_LLM", "the name of a version 1 file's layout")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return errors.New(usage)
	}
	file := fs.Arg(0)
	f, err := layout.Load(file)
	switch args[0] {
	case "check":
		if err == nil {
			var specs []actors.LayoutSpec
			if specs, err = layout.CompileAll(f, *name, actors.DefaultRegistry); err == nil {
				for _, s := range specs {
					fmt.Fprintf(stdout, "%s: layout %s: %d chats at once\n", file, s.Name, s.Capacity())
				}
				return nil
			}
		}
		fmt.Fprintln(stderr, err)
		return errLayoutInvalid
	case "graph":
		if err != nil {
			fmt.Fprintln(stderr, err)
			return errLayoutInvalid
		}
		return layout.WriteGraph(stdout, f, *name, *format)
	}
	return errors.New(usage)
}

// startLayouts starts a file's layouts; if one fails, those started stop.
func startLayouts(system *actor.ActorSystem, specs []actors.LayoutSpec, m *actors.Metrics, logger *slog.Logger) (map[string]*actors.Layout, error) {
	layouts := map[string]*actors.Layout{}
	for _, s := range specs {
		l, err := actors.StartLayout(system, s, m, logger)
		if err != nil {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			for _, started := range layouts {
				_ = started.Stop(ctx)
			}
			return nil, fmt.Errorf("layout %s: %w", s.Name, err)
		}
		layouts[s.Name] = l
	}
	return layouts, nil
}

// slotURLs are the endpoint URLs to register with the Agent, per LLM name.
func slotURLs(gw *gateway.Server, base string, names []string) map[string][]string {
	out := map[string][]string{}
	for _, name := range names {
		out[name] = gw.SlotURLs(base, name)
	}
	return out
}

func quoteList(names []string) string {
	quoted := make([]string, len(names))
	for i, n := range names {
		quoted[i] = strconv.Quote(n)
	}
	return strings.Join(quoted, ", ")
}

// capacities says each layout's places, for the start-up log line.
func capacities(layouts map[string]*actors.Layout) string {
	var parts []string
	for _, name := range slices.Sorted(maps.Keys(layouts)) {
		parts = append(parts, fmt.Sprintf("%s=%d", name, layouts[name].Admission.Capacity()))
	}
	return strings.Join(parts, " ")
}
