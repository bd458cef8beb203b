"""Evaluation: perplexity by context length, pass-key retrieval, LongBench / InfiniteBench / L-Eval
(`longbench`, `infinitebench`, `leval`: official prompts and scores; `run_benchmark`), metrics."""
from .benchmark_run import run_benchmark
from .generate import generate_answer
from .harness import ScoreBoard, format_table, plot_lines, run_scored, write_json
from .longbench import longbench_eval
from .metrics import best_over, contains_answer, digit_accuracy, exact_match, first_line, normalize_answer, token_f1
from .passkey import passkey_eval
from .perplexity import perplexity_by_length, window_nll

__all__ = ["run_benchmark", "generate_answer", "ScoreBoard", "format_table", "plot_lines", "run_scored", "write_json",
           "longbench_eval", "best_over", "contains_answer", "digit_accuracy", "exact_match", "first_line",
           "normalize_answer", "token_f1", "passkey_eval", "perplexity_by_length", "window_nll"]
