"""Summarise a cProfile of `tav tune` (run3.sh): cumulative seconds of the calls that matter to a fresh process."""
import pstats
import sys

stats = pstats.Stats(sys.argv[1])
stats.sort_stats("cumulative").print_stats(45)
stats.sort_stats("tottime").print_stats(25)
