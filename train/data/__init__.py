"""train.data: shards -> batches — listing and streaming shards, sample checks, crops, shuffles and the batch's text."""
