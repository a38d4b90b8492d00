"""``robust-transfer completion bash``: a shell completion script built from the parser.

``robust-transfer completion bash > ~/.local/share/bash-completion/completions/robust-transfer``,
once, completes commands, subcommands, options and zoo names; zsh loads the same script
through ``bashcompinit``. Building the script imports every command (torch included,
seconds), so it is written to a file once rather than ``eval``-ed in every new shell.
"""

from __future__ import annotations

import argparse

from robust_transfer.cli.common import command_help
from robust_transfer.models import zoo

# arguments that take a zoo name (completed from the zoo)
_ZOO_POSITIONALS = {("zoo", "fetch"), ("finetune", None), ("evaluate", None)}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("completion", help=command_help("completion"),
                       description="Print a completion script. Save it once (building it "
                       "takes seconds, too slow for every new shell): robust-transfer completion "
                       "bash > ~/.local/share/bash-completion/completions/robust-transfer; zsh: "
                       "robust-transfer completion zsh > ~/.zsh_robust_transfer and add "
                       "'source ~/.zsh_robust_transfer' to ~/.zshrc.")
    p.add_argument("shell", choices=("bash", "zsh"), help="the shell")
    p.set_defaults(func=_completion)


def _completion(args: argparse.Namespace) -> int:
    from robust_transfer.cli import build_parser

    script = bash_script(build_parser())
    if args.shell == "zsh":
        script = "autoload -U +X bashcompinit && bashcompinit\n" + script
    print(script)
    return 0


def bash_script(parser: argparse.ArgumentParser) -> str:
    """A bash completion function for ``parser`` (commands, subcommands, options, zoo names)."""
    cases = []
    commands = _subparsers(parser)
    for name, cmd in commands.items():
        subs = _subparsers(cmd)
        inner = [f'      {s}) opts="{_words(p, name, s)}";;' for s, p in subs.items()]
        inner.append(f'      *) opts="{" ".join(subs) or _words(cmd, name, None)}";;')
        cases.append(f'    {name})\n      case "$sub" in\n' + "\n".join(inner) + "\n      esac;;")
    top = " ".join([*commands, "--help", "--version"])
    return _TEMPLATE.format(cases="\n".join(cases), top=top)


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _words(parser: argparse.ArgumentParser, command: str, sub: str | None) -> str:
    words = [o for a in parser._actions for o in a.option_strings if o.startswith("--")]
    if (command, sub) in _ZOO_POSITIONALS:
        words += zoo.zoo_names()
    return " ".join(words)


_TEMPLATE = """_robust_transfer() {{
  local cur="${{COMP_WORDS[COMP_CWORD]}}" cmd="${{COMP_WORDS[1]}}" sub="${{COMP_WORDS[2]}}" opts
  if [[ $COMP_CWORD -eq 1 ]]; then
    opts="{top}"
  else
    case "$cmd" in
{cases}
      *) opts="";;
    esac
  fi
  COMPREPLY=( $(compgen -W "$opts" -- "$cur") )
}}
complete -o default -o bashdefault -F _robust_transfer robust-transfer"""
