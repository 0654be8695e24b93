"""Running the stages: the stage registry, the runner, the code-dependency closure, the report."""
