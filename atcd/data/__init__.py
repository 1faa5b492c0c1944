"""Datasets in [0,1] pixel space: the bundled `mnist-mini`, image folders (WebDataset in `wds`)."""
from .eval_plan import (  # noqa: F401
    ChunkLoader,
    EvalPlan,
    chunk_seed,
    create_eval_loader,
    read_sample_ids,
)
from .factory import (  # noqa: F401
    create_atcd_dataset,
    create_atcd_loader,
    list_builtin_datasets,
    set_data_epoch,
    split_holdout,
)
from .mnist_mini import MnistMini, load_mnist_mini  # noqa: F401
from .registry import (  # noqa: F401
    builtin_datasets,
    check_data_dir,
    dataset_eps,
    describe_datasets,
    get_dataset_spec,
    list_datasets,
    register_dataset,
    resolve_dataset,
)
from .train_loaders import create_train_loaders  # noqa: F401
from .transforms import (  # noqa: F401
    check_transform_options,
    create_pixel_transform,
    resolve_data_config,
    resolve_input_size,
    transform_kwargs,
)
from .wds import WdsLoader, create_wds_loader, is_wds  # noqa: F401
from .wds_read import shard_keys  # noqa: F401
