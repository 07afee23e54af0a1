"""Where bitdet's log lines go: the console for what a user acts on, the log file for the rest."""

# A logger whose records go to OUTPUT_DIR/log.txt only (set up by the tools): the environment,
# the command line, the full config, the model's printout and tracebacks of user errors.
FILE_LOGGER = "bitdet.logfile"
