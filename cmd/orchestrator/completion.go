package main

import (
	"fmt"
	"io"
	"regexp"
	"slices"
	"strings"
)

// flagPattern finds the flags named in a command's usage.
var flagPattern = regexp.MustCompile(`--[a-z][a-z-]*`)

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
		if len(parts) == 2 && parts[0] != "keys" {
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
  local words=""
  case "$key" in
`)
	for _, k := range keys {
		fmt.Fprintf(w, "    %q) words=%q ;;\n", k, strings.Join(words[k], " "))
	}
	fmt.Fprint(w, `  esac
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
