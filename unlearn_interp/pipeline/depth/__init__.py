"""The depth profile: where the forgotten knowledge still is, layer by layer (``step``: the step
and what it measures on each kind of subject; ``summary``: its report section and metrics entry)."""
