"""Stage 1, data: turn files and rows into the batches a trainer would see, with roles where they can be known.

``files`` reads raw rows, ``stream`` and ``chunks`` stream tokenized rows in bounded memory, ``batch`` says what a
batch is, ``roles`` and ``templates`` derive prompt and completion from the tokens, ``pipelines`` and ``trl`` build
the labels as a trainer would, ``tokens`` resolves the end and pad tokens, ``load`` ties them to paths.
"""
