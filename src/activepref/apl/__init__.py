"""Active preference learning for DPO with the policy in the loop (seed 004).

``activepref apl --config apl.yaml --out DIR`` runs every (acquisition, seed) of the config
in ``DIR/runs/<acquisition>-seed<k>/`` (resumable: rerun the same command) and writes the
win-rate report to ``DIR``. Modules: :mod:`.config` (the YAML schema), :mod:`.scores`
(acquisition math), :mod:`.policy` (theta0 copies, checkpoints, TRL DPO), :mod:`.referee`
(pairwise or Likert judging of two completions), :mod:`.store` (run state), :mod:`.loop`
(algorithm 1), :mod:`.report` (CSV, markdown, plot), :mod:`.driver` (runs + report),
:mod:`.quickstart` (the offline demo config).
"""
