"""Multi-worker training (MultiWorkerMirroredStrategy): the worker's side.

`coordination` is the one module that touches TensorFlow's private
coordination-service API; the others build on it: `strategy` (building the
strategy with ftharness's timeouts), `worker_group` (this worker's place,
found from the model's variables), `stop` (the coordinated stop),
`agreement` (the restore step), `parts` (per-worker checkpoint parts handed
to the chief), `errors` (collective failures -> PEER_LOST).
"""
