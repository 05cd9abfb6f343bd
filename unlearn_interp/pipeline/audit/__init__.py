"""The audit of any unlearned model against its base (``unlearn-interp audit``): ``pair`` (which
unlearned model, its changed tensors), ``changes`` (where unlearning wrote; the layer chosen
there), ``scores`` (accuracy and gap recovered with intervals over items) and ``run`` (the
audit's steps, :func:`~.run.audit` and :func:`~.run.audit_model`)."""
