"""The report toolkit: one way to turn a sweep's workdirs into numbers, tables and
figures, used by ``python -m launch report`` and by every study's report.

    from rnnlab.report import gather, groups, stats, tables, curves, style

    trials = gather.gather("runs/my_sweep")             # config + result + metrics + status
    for label, members in groups.group(trials, fallback="my_study").items():
        s = stats.mean_ci([t["result"]["test_loss"] for t in members], nonnegative=True)
        print(label, tables.ci_text(s))

Modules:
  gather   read each workdir (config.json, result.json, metrics.jsonl, status.json)
  groups   configurations with the seed factored out, labelled by the keys that vary
  stats    mean, sample std and the 95% Student-t interval over seeds (with caveats)
  curves   train/validation curves from metrics.jsonl, drawn so a single point shows
  tables   markdown tables and CSV rendered from gathered rows, interval footnotes
  style    THE matplotlib set-up (Agg backend, one look) for every figure in the repo
"""
