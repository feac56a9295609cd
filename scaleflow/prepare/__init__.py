"""`scaleflow data prepare`: documents in, token shards and meta.json out.

- sources: the inputs (text files, JSONL, parquet, local Hugging Face datasets) as documents
- tokenizer: a tokenizers JSON file, or a byte-level BPE trained on the corpus
- shards: shard files written atomically, and the progress file that makes a run resumable
- meta: the output format (meta.json), and reading a prepared directory back (the trainer)
- pipeline: the whole run: split, tokenize in several processes, write, resume

Nothing heavy is imported here: `tokenizers` and `datasets` load only when a run needs them.
"""
