"""The `airv` subcommands, one module each, all of one shape (airv.cli.Command): HELP, its line
in `airv --help`; DESCRIPTION, what `airv NAME --help` prints; add_arguments(parser); and
main(args), which returns the exit code. evaluate, report and plan also hold what they
compute."""
