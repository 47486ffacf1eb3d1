#!/bin/sh
# bench_dashboard.sh — the dashboard's load time in headless Chromium with
# 10,000 jobs in kilnd's database: time from reload to the first page of 50
# rows rendered (HTML, CSS, JS, /v1/me, models, datasets, presets, baselines,
# one page of jobs), median of BENCH_RUNS (5) loads. Same harness as the
# browser test (tests/test_browser.sh MODE=bench: real kilnd on a random port,
# fresh state, jobs seeded with sqlite3). Prints:
#   dashboard_load_ms median=… min=… max=… runs=5 jobs_in_db=10006 page=50
# Run from the repository root (bench/run.sh does); arguments are ignored.
set -eu
MODE=bench exec tests/test_browser.sh
