#!/usr/bin/python3
"""check_onnx.py — Debian python3-onnx's view of kiln's ONNX exports.

  check_onnx.py check M.onnx...       onnx.checker.check_model(full_check=True) on each
  check_onnx.py ops M.onnx            {"op_type": count, ...} of the graph (JSON)

Runs with /usr/bin/python3 (Debian's onnx 1.12, which knows opsets up to 17).
"""
import collections
import json
import sys

import onnx


def main():
    cmd, files = sys.argv[1], sys.argv[2:]
    if cmd == 'check':
        for f in files:
            onnx.checker.check_model(onnx.load(f), full_check=True)
            print(f'{f}: checker ok')
    elif cmd == 'ops':
        m = onnx.load(files[0])
        print(json.dumps(dict(collections.Counter(n.op_type for n in m.graph.node))))
    else:
        sys.exit(f'check_onnx.py: unknown command {cmd}')


main()
