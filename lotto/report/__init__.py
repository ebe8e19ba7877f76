"""Comparing runs: `lotto runs` and `lotto compare`, and the figures every command draws.

One job per module:

- `discover`: find run directories, read their config, status and headline (stdlib + PyYAML
  only, so that `lotto runs` starts fast: no pandas, no torch);
- `aggregate`: the runs' metrics as one frame, the differing config keys as columns, and the
  per-command tables, aggregated over seeds (mean, std, 95% t-interval of the mean);
- `plots`: the figures (matplotlib, Agg), shared by `compare` and the single runs;
- `html`: the written report: figures (PNG + SVG), tables (CSV + Markdown), `report.html`.
"""
