"""The guide model: architectures (`models`), fast inference (`fast`, compiled by `compiling`),
checkpoints, the entry point for every method that runs it (`load`), robust training (`train`,
`attacks`, `augment`) and difficulty scoring (`score`)."""
