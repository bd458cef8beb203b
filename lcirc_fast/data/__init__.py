"""Data for LCIRC training and evaluation: corpora, splits, segmenting steps, QA samples."""
from .collate import pad_batch
from .qa import QASample, SyntheticQA, build_qa_sample, prepare_training
from .splits import kjv_splits, split_by_name
from .stage1 import (
                     Stage1Step,
                     draw_boundaries,
                     repeat_passage_steps,
                     repeated_passage_docs,
                     stage1_steps,
                     stage1_stream,
)
from .templates import TEMPLATES, Template, get_template, query_text
from .tokenized import chunk_documents, encode, tokenize_documents
from .truncation import HeadTail, head_tail, truncate_with_labels

__all__ = ["pad_batch", "QASample", "SyntheticQA", "build_qa_sample", "prepare_training",
           "kjv_splits", "split_by_name", "Stage1Step", "draw_boundaries", "stage1_steps",
           "repeat_passage_steps", "repeated_passage_docs",
           "stage1_stream", "TEMPLATES", "Template", "get_template", "query_text",
           "chunk_documents", "encode", "tokenize_documents", "HeadTail", "head_tail",
           "truncate_with_labels"]
