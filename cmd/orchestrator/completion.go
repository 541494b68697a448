package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/flotaio/flota/internal/httpapi"
)

// flagPattern finds the flags named in a command's usage.
var flagPattern = regexp.MustCompile(`--[a-z][a-z-]*`)

// localGroups are the command groups that run without a server: they take
// no --server or --token.
var localGroups = []string{"keys"}

// idKinds says which IDs complete a command's positional argument, and a
// flag's value: the API's collection to list.
var idKinds = map[string]string{
	"update status": "updates", "update watch": "updates", "update devices": "updates", "update events": "updates",
	"update pause": "updates", "update resume": "updates", "update cancel": "updates", "update retry-failed": "updates",
	"firmware delete": "firmware", "--firmware": "firmware",
	"device delete": "devices", "device approve": "devices", "device revoke": "devices", "--device": "devices",
}

// completeIDsCommand is the hidden command the completion script runs to
// list IDs: orchestrator __complete KIND PREFIX.
const completeIDsCommand = "__complete"

// maxCompletions bounds the IDs one completion lists.
const maxCompletions = 200

// completionWords returns, for "" (the first word) and for each command
// group and command, the words that may follow it.
func completionWords() map[string][]string {
	words := map[string][]string{"": {"help"}}
	add := func(key, w string) {
		if !slices.Contains(words[key], w) {
			words[key] = append(words[key], w)
		}
	}
	for _, sp := range commands {
		parts := strings.Fields(sp.name)
		add("", parts[0])
		if len(parts) == 2 {
			add(parts[0], parts[1])
		}
		flags := flagPattern.FindAllString(sp.args, -1)
		if len(parts) == 2 && !slices.Contains(localGroups, parts[0]) {
			flags = append(flags, "--server", "--token")
		}
		for _, f := range append(flags, "--help") {
			add(sp.name, f)
		}
		if sp.name == "completion" {
			add(sp.name, "bash")
			add(sp.name, "zsh")
		}
	}
	return words
}

// writeCompletion writes a bash completion script; zsh loads it through
// bashcompinit.
func writeCompletion(w io.Writer, shell string) {
	words := completionWords()
	keys := make([]string, 0, len(words))
	for k := range words {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	if shell == "zsh" {
		fmt.Fprint(w, "#compdef orchestrator\nautoload -U +X bashcompinit && bashcompinit\n")
	}
	fmt.Fprint(w, `# orchestrator shell completion
_orchestrator() {
  local cur key i
  cur="${COMP_WORDS[COMP_CWORD]}"
  key=""
  for ((i = 1; i < COMP_CWORD; i++)); do
    case "${COMP_WORDS[i]}" in -*) continue ;; esac
    if [ -z "$key" ]; then key="${COMP_WORDS[i]}"
    elif [ "$key" = "${key% *}" ]; then key="$key ${COMP_WORDS[i]}"
    fi
  done
  local words="" kind=""
  case "$key" in
`)
	for _, k := range keys {
		fmt.Fprintf(w, "    %q) words=%q ;;\n", k, strings.Join(words[k], " "))
	}
	kinds := make([]string, 0, len(idKinds))
	for k := range idKinds {
		kinds = append(kinds, k)
	}
	slices.Sort(kinds)
	fmt.Fprint(w, `  esac
  # IDs come from the API, when a token is set (FLOTA_TOKEN) and the word
  # is a command's ID or a flag's value that names one.
  local prev="${COMP_WORDS[COMP_CWORD-1]}" what="$key"
  case "$prev" in --*) what="$prev" ;; esac
  case "$what" in
`)
	for _, k := range kinds {
		fmt.Fprintf(w, "    %q) kind=%s ;;\n", k, idKinds[k])
	}
	fmt.Fprintf(w, `  esac
  if [ -n "$kind" ] && [ -n "$FLOTA_TOKEN" ] && case "$cur" in -*) false ;; *) true ;; esac; then
    words=$("${COMP_WORDS[0]}" %s "$kind" "$cur" 2>/dev/null)
  fi`, completeIDsCommand)
	fmt.Fprint(w, `
  # Nothing to offer for a positional argument: complete file names.
  COMPREPLY=($(compgen -W "$words" -- "$cur"))
  case "$cur" in -*) ;; *) [ ${#COMPREPLY[@]} -eq 0 ] && COMPREPLY=($(compgen -f -- "$cur")) ;; esac
}
complete -F _orchestrator orchestrator
`)
}

func (c *cli) completion(args []string) error {
	fs, sp := c.newFlags("completion")
	pos, err := c.parse(fs, sp, args, "SHELL")
	if err != nil {
		return err
	}
	switch pos[0] {
	case "bash", "zsh":
		writeCompletion(c.stdout, pos[0])
		return nil
	}
	return &usageError{msg: fmt.Sprintf("unknown shell %q: want bash or zsh", pos[0]), spec: sp}
}

// completeIDs prints the IDs of kind (updates, devices or firmware) that
// start with prefix, one a line, at most maxCompletions, for the completion
// script. It talks to FLOTA_SERVER with FLOTA_TOKEN and gives up after a
// few seconds: a completion must not hang a shell.
func (c *cli) completeIDs(ctx context.Context, args []string) error {
	if len(args) < 1 || len(args) > 2 {
		return &usageError{msg: "usage: orchestrator " + completeIDsCommand + " updates|devices|firmware [PREFIX]"}
	}
	kind, prefix := args[0], ""
	if len(args) == 2 {
		prefix = args[1]
	}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	server := c.getenv("FLOTA_SERVER")
	if server == "" {
		server = DefaultServer
	}
	cl := c.client(server)
	var ids []string
	switch kind {
	case "updates":
		ups, err := cl.ListUpdates(ctx)
		if err != nil {
			return err
		}
		for _, u := range ups {
			ids = append(ids, u.ID)
		}
	case "firmware":
		fws, err := cl.ListFirmware(ctx)
		if err != nil {
			return err
		}
		for _, fw := range fws {
			ids = append(ids, fw.ID)
		}
	case "devices":
		q := url.Values{"limit": {strconv.Itoa(maxCompletions)}}
		if prefix != "" {
			// Just below every ID that starts with prefix: IDs are
			// printable ASCII, below 0x7f.
			b := []byte(prefix)
			b[len(b)-1]--
			q.Set("after", string(b)+"\x7f")
		}
		var page httpapi.DeviceList
		if err := cl.do(ctx, http.MethodGet, "/api/v1/devices", q, nil, &page); err != nil {
			return err
		}
		for _, d := range page.Devices {
			ids = append(ids, d.ID)
		}
	default:
		return &usageError{msg: fmt.Sprintf("unknown kind %q: want updates, devices or firmware", kind)}
	}
	n := 0
	for _, id := range ids {
		if strings.HasPrefix(id, prefix) && n < maxCompletions {
			fmt.Fprintln(c.stdout, termSafe(id))
			n++
		}
	}
	return nil
}
