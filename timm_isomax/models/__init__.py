"""Models: the IsoMax classifier around a timm backbone (:mod:`.classifier`), its entrypoints in timm's registry
(:mod:`.registry`, filed under :mod:`.isomax_models`), SoftMax-to-IsoMax conversion (:mod:`.conversion`),
checkpoint reading (:mod:`.checkpoints`), batched inference (:mod:`.inference`), airbench's whitened first layer (:mod:`.whitening`) and the CIFAR backbones
(:mod:`.cifar_resnet`, :mod:`.cifar_airnet`)."""
