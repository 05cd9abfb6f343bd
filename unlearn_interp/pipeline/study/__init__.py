"""The real-model study (``unlearn-interp demo --model smollm2-135m``): ``config`` (its arms,
variants and SmolLM2-135M settings), ``data`` (the assets, the study built from them), ``seeds``
(the base model scored once, each arm's seeds as sub-runs), ``intervals`` (the headline with
95% intervals over items and seeds) and ``run`` (the study's steps, :func:`~.run.run_study`)."""
