"""What every task runs on: the training engine (:mod:`.fit`, :mod:`.loop`), the task interface and registry
(:mod:`.task`), checkpoints, distributed set-up, progress, the run log, the model builder and the option types of the
command lines. The tasks themselves live in :mod:`visattn.tasks`."""
