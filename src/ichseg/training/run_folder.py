"""The names of a run folder's files (docs/CONTRACT.md, "Run folder"), for whoever writes or
reads them: the trainer, `ichseg status`, predict."""

CONFIG_FILE = "config.yaml"
SPLIT_FILE = "split.json"
TRAIN_LOG = "train.log"
ARCHIVE = "archive"
