"""The recovery ledger: is the knowledge gone or hidden? ``subjects`` (what is attacked, per kind
of run), ``parts`` (each attack family on the unlearned model and its controls, resumable), ``table``
(per-item rows to the ledger table, its headline rows, report section and metrics entry) and
``step`` (the pipeline step that runs the parts and writes the table)."""
