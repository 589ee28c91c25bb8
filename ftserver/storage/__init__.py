"""The on-disk format of unfinished transfers, and its one reader.

- :mod:`~ftserver.storage.staging`: the layout ``<data>/staging/<bucket>/<esc(clientId)>/
  <esc(fileId)>/{meta,data,journal}``, creating and locking a transfer's directory, its
  init metadata, listing what is staged.
- :mod:`~ftserver.storage.journal`: the journal's records and :func:`~ftserver.storage.
  journal.replay`, what a journal means, for every reader.
- :mod:`~ftserver.storage.recovery`: reopening a staged transfer from its replay (blocking).
- :mod:`~ftserver.storage.gc`: the collector of expired staging.
- :mod:`~ftserver.storage.listing`: the transfers in progress as the HTTP API lists them.
- :mod:`~ftserver.storage.walk`: the sorted, resumable directory walk listings page through.

No policy lives here (which transfers are open, when to checkpoint, close or export them):
that is :mod:`ftserver.transfer.store`'s.
"""
