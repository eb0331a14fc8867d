#!/bin/sh
# A job script for the default configuration (config.example.yaml):
#   {"type": "cli", "params": {"command": "./examples/hello.sh", "params": ["world"]}}
echo "hello, ${1:-world} (from $(hostname) at $(date -u +%H:%M:%S))"
