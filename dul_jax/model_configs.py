"""Each built-in family's model config defaults, and the GAN's optimizer groups: plain
ConfigDicts, importable without jax, so config files (and the mistakes in them) are read before the
trainer's imports. Each task module takes its `default_model_config` from here."""

import ml_collections


def autoregressive() -> ml_collections.ConfigDict:
    m = ml_collections.ConfigDict()
    m.num_layers = 4
    m.num_heads = 4
    m.embed_dim = 128
    m.mlp_dim = 512
    m.dropout = 0.0
    m.dtype = 'float32'          # compute dtype
    m.param_dtype = 'float32'    # or 'bfloat16': matrices and their Adam moments (cast_params)
    m.remat = 'none'             # 'none', 'full' or 'dots'
    # Layers per step of the scan over layers: 1 (a rolled scan) keeps compile time flat in depth;
    # more, up to 0 = all (a plain unrolled stack), buys a faster step with compile time that
    # grows with depth (both measured in benchmarks/README.md).
    m.scan_unroll = 1
    m.class_conditional = False  # condition on the data set's labels (images)
    m.mup_base_width = 0           # > 0: µP with this base width (train/mup.py); 0: standard
    return m


def pixelcnn() -> ml_collections.ConfigDict:
    m = ml_collections.ConfigDict()
    m.kind = 'gated'               # 'pixelcnn' or 'gated'
    m.output = 'categorical'       # 'categorical' or 'logistic_mixture'
    m.num_mixtures = 5             # logistic mixture components
    m.hidden = 64                  # channels of every hidden layer
    m.num_layers = 8               # residual blocks (pixelcnn) or gated layers (gated)
    m.kernel_size = 3
    m.first_kernel_size = 7
    m.dtype = 'float32'            # compute dtype; params stay float32
    m.class_conditional = False    # a per-class bias in every layer
    return m


def mae() -> ml_collections.ConfigDict:
    m = ml_collections.ConfigDict()
    m.patch_size = 2
    m.embed_dim = 128
    m.num_layers = 4
    m.num_heads = 4
    m.mlp_dim = 512
    m.decoder_embed_dim = 64       # the decoder is narrower and shallower than the encoder
    m.decoder_layers = 2
    m.decoder_heads = 4
    m.decoder_mlp_dim = 256
    m.mask_ratio = 0.75
    m.norm_pix_loss = False        # targets normalised per patch (mean 0, variance 1)
    m.dtype = 'float32'            # compute dtype
    m.param_dtype = 'float32'      # or 'bfloat16': matrices and their Adam moments (cast_params)
    m.remat = 'none'               # 'none', 'full' or 'dots'
    m.scan_unroll = 1              # layers per scan step; 0 = all (unrolled)
    m.probe_pool = 'cls'           # probe features: the cls token, or the mean of patch tokens
    m.mup_base_width = 0           # > 0: µP with this base width (train/mup.py); 0: standard
    return m


def diffusion() -> ml_collections.ConfigDict:
    m = ml_collections.ConfigDict()
    m.kind = 'unet'               # 'unet' or 'dit'
    m.schedule = 'cosine'         # 'linear' or 'cosine'
    m.num_steps = 1000            # T
    m.prediction = 'eps'          # what the network outputs: 'eps', 'v' or 'x0'
    m.weighting = 'eps'           # loss weighting: 'eps' (L_simple), 'x0', 'v', 'min_snr_gamma'
    m.snr_gamma = 5.0             # gamma of 'min_snr_gamma'
    m.class_conditional = True
    m.label_dropout = 0.1         # P(label -> null class) in training: classifier-free guidance
    m.image_size = 0              # pad images with background to this size; 0: the data's size
    m.dropout = 0.0
    m.dtype = 'float32'           # compute dtype
    m.param_dtype = 'float32'     # or 'bfloat16': matrices and their Adam moments (cast_params)
    m.num_heads = 4
    # U-Net
    m.channels = 64
    m.channel_mults = (1, 2, 2)
    m.num_res_blocks = 2
    m.attn_resolutions = (8,)     # feature-map heights with self-attention
    m.groups = 8                  # GroupNorm groups
    # DiT
    m.patch = 2
    m.embed_dim = 128
    m.num_layers = 4
    m.mlp_dim = 512
    m.remat = 'none'
    m.scan_unroll = 1             # blocks per scan step; 0 = all (unrolled)
    # Variance of the bound's decoder p(x_0 | x_1): 'posterior_clipped' (DDPM's code: the
    # posterior variance at t = 2) or 'beta_1'; see losses/diffusion.py decoder_log_variance.
    m.vlb_decoder_variance = 'posterior_clipped'
    m.mup_base_width = 0           # > 0: µP with this base width (train/mup.py); 0: standard
    return m


def vae() -> ml_collections.ConfigDict:
    m = ml_collections.ConfigDict()
    m.channels = (32, 64)          # conv stages, each halving the image; () = fully connected
    m.hidden = (256,)              # dense layers after the conv stages (mirrored in the decoder)
    m.latent_dim = 32
    m.likelihood = 'bernoulli'     # 'bernoulli' (2 levels), 'categorical', 'logistic_mixture'
    m.mixtures = 5                 # logistic components per pixel value
    m.objective = 'elbo'           # 'elbo' or 'iwae' (Burda et al. 2016)
    m.train_samples = 1            # posterior samples per example in training (k of the IWAE)
    m.beta = 1.0                   # weight of the KL (beta-VAE); 1 is the ELBO
    m.free_bits = 0.0              # nats per latent dimension below which the KL is not pushed
    m.kl_warmup_steps = 0          # the KL's weight rises linearly from 0 to beta over these steps
    m.dtype = 'float32'            # compute dtype; params stay float32
    return m


def vqvae() -> ml_collections.ConfigDict:
    m = ml_collections.ConfigDict()
    m.stages = 2                   # stride-2 stages: a (H/4, W/4) code grid; 1 for 8x8 digits
    m.hidden = 64                  # width at the code grid; halved per stage towards pixels
    m.res_channels = 32            # the residual blocks' bottleneck
    m.res_blocks = 2
    m.code_dim = 32                # D, the dimension of each code vector
    m.num_codes = 128              # K, the codebook size (the prior's vocabulary)
    m.beta = 0.25                  # weight of the commitment loss (the paper's 0.25)
    m.codebook_update = 'gradient'  # 'gradient' (codebook loss) or 'ema' (running averages)
    m.ema_decay = 0.99             # 'ema': the averages' decay (Sonnet's 0.99)
    m.restart_threshold = 0.0      # 'ema': restart codes used less often per step; 0 = never
    m.likelihood = 'logistic_mixture'  # 'bernoulli' (2 levels), 'categorical', 'logistic_mixture'
    m.mixtures = 5                 # logistic components per pixel value
    m.dtype = 'float32'            # compute dtype; params stay float32
    return m


def flow() -> ml_collections.ConfigDict:
    m = ml_collections.ConfigDict()
    m.kind = 'realnvp'             # 'realnvp' or 'glow' (models/flows.py)
    m.scales = 2                   # each but the last squeezes 2x2 and factors half out
    m.steps = 3                    # couplings per stage (RealNVP) or flow steps per scale (Glow)
    m.hidden = 64                  # channels of the coupling nets
    m.blocks = 2                   # residual blocks per coupling net
    m.scale_fn = 'tanh'            # 'tanh' (RealNVP) or 'sigmoid' (Glow) bound on the log-scale
    m.logit_alpha = 0.05           # x -> logit(alpha + (1 - 2 alpha) x)
    m.dequantization = 'uniform'   # 'uniform' or 'variational' (Flow++)
    m.dequantizer_steps = 4        # couplings of the variational dequantizer
    m.dequantizer_hidden = 32
    m.dtype = 'float32'            # compute dtype of the coupling nets; params stay float32
    return m


def gan() -> ml_collections.ConfigDict:
    m = ml_collections.ConfigDict()
    m.arch = 'conv'                # 'conv' (images: DCGAN/SNGAN-style) or 'mlp' (2-D points)
    m.loss = 'hinge'               # 'non_saturating', 'hinge' or 'wasserstein'
    m.spectral_norm = True         # on every discriminator layer
    m.gradient_penalty = 0.0       # WGAN-GP's lambda (10 in the paper); 0 = off
    m.r1 = 0.0                     # R1's gamma (the penalty is gamma / 2 E||grad||^2); 0 = off
    m.d_steps = 1                  # discriminator updates per generator update
    m.pack = 1                     # PacGAN: the discriminator judges groups of this many examples
    m.z_dim = 64
    m.g_channels = 64              # conv: the generator's width (its first map has 2x)
    m.d_channels = 64              # conv: the discriminator's first width (then 2x, 4x)
    m.width = 256                  # mlp: units per layer of both players
    m.depth = 3                    # mlp: hidden layers of both players
    m.class_conditional = False
    m.dtype = 'float32'
    return m


def contrastive() -> ml_collections.ConfigDict:
    m = ml_collections.ConfigDict()
    m.method = 'simclr'            # 'simclr', 'byol' or 'supervised'
    m.encoder = 'resnet'           # 'resnet' or 'vit'
    m.width = 32                   # resnet: the first stage's channels (then 2x, 4x, ...)
    m.blocks = (1, 1, 1)           # resnet: residual blocks per stage
    m.stem_stride = 1              # resnet: 2 halves the resolution before the first stage
    m.patch_size = 4               # vit
    m.embed_dim = 128
    m.num_layers = 4
    m.num_heads = 4
    m.mlp_dim = 512
    m.head_hidden = 512            # projector (and BYOL's predictor) hidden width
    m.head_dim = 128               # projection width
    m.temperature = 0.5            # simclr
    m.target_decay = 0.99          # byol: the target's EMA rate at step 0, cosine up to 1
    m.augment = augment()
    m.dtype = 'float32'
    m.remat = 'none'               # vit
    m.scan_unroll = 1              # vit
    return m


def augment() -> ml_collections.ConfigDict:
    """Contrastive augmentations (data/augment.py): SimCLR-style defaults, without flips
    (digits are not mirror-symmetric) or erasing."""
    return ml_collections.ConfigDict({
        'crop_scale': (0.2, 1.0), 'crop_ratio': (3 / 4, 4 / 3), 'flip': False,
        'jitter_prob': 0.8, 'brightness': 0.4, 'contrast': 0.4,
        'blur_prob': 0.5, 'blur_sigma': (0.1, 2.0),
        'erase_prob': 0.0, 'erase_scale': (0.02, 0.33), 'erase_ratio': (0.3, 3.3)})


def gan_optimizer_groups(generator_lr: float,
                         discriminator_lr: float) -> ml_collections.ConfigDict:
    """optim.groups for the two players' learning rates (TTUR, Heusel et al. 2017, where they
    differ); every other optim setting is shared."""
    return ml_collections.ConfigDict({'generator': {'lr': generator_lr},
                                      'discriminator': {'lr': discriminator_lr}})
