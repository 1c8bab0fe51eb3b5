"""The four special token ids, the same in every vocabulary and every model of this project.

SentencePiece is trained with these ids (``transformer.data.tokenizer``); the model masks ``PAD_ID`` and its
embedding keeps that row at zero; the searches start from ``BOS_ID`` and stop at ``EOS_ID``. Fixed ids are
why a checkpoint needs no ``pad_id`` setting. This module imports nothing.
"""

PAD_ID = 0
UNK_ID = 1
BOS_ID = 2
EOS_ID = 3
