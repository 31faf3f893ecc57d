"""The PixelCNNs one position at a time with cached activations: fast sampling and coding.

Running the whole network once per position costs H*W*C forward passes per image; here a
position costs about one pixel's share of a forward pass (and the vertical stack one row's share
per row), from the same parameters:
- Gated PixelCNN: the horizontal stack at pixel (i, j) needs, per layer, its input at columns
  j-p..j of row i (the image canvas for the first layer, then a row buffer of the previous
  layer's outputs, written as the pixels come) and the vertical stack's
  pre-activation at (i-1, j) (kept for the row above). The vertical stack runs one row at a time
  once that row is complete, from a buffer of the rows above that its kernel reaches.
- PixelCNN: every layer's input is kept as a padded canvas; the k x k patch around the pixel in
  each gives that layer's output at the pixel (the masks zero the taps not yet written).
Within a pixel, hidden channel group g depends only on data channels < g (the masks), so the
step at channel c, with later channels still zero, gives the final values of groups <= c, and the
last channel's step leaves every cached value final before any later position reads it.

The outputs equal the full model's up to float rounding (tested at every position), not bit for
bit: an entropy coder must use this path on both sides.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from dul_jax.models.pixelcnn import GatedPixelCNN, gate, masked_kernel


def _kernel(p, centre, mask, channels, dtype):
    return (masked_kernel(p['kernel'], centre, mask, channels).astype(dtype),
            p['bias'].astype(dtype))


def _dense(x, p, mask, channels, dtype):
    """A 1x1 MaskedConv on one pixel's features (B, F)."""
    kernel, bias = _kernel(p, (0, 0), mask, channels, dtype)
    return x.astype(dtype) @ kernel[0, 0] + bias


def _class_bias(p, name, labels, row=False):
    """The layer's per-class bias, (B, F) (or (B, 1, F) for a row), or 0 if unconditional."""
    if labels is None or name not in p:
        return 0.0
    return p[name][labels][:, None] if row else p[name][labels]


def _head(model, params, x):
    """The output head at one pixel: (B, hidden) -> (B, C, P) float32."""
    c, dtype = model.data_channels, model.dtype
    x = _dense(nn.relu(x), params['head_hidden'], 'B', c, dtype)
    x = _dense(nn.relu(x), params['head'], 'B', c, dtype)
    return x.reshape(x.shape[0], model.out_per_channel, c).swapaxes(-1, -2).astype(jnp.float32)


def _pads(model):
    """Per layer, kernel_size // 2 (the first layer's from first_kernel_size)."""
    return [(model.kernel_size if i else model.first_kernel_size) // 2
            for i in range(model.num_layers)]


def _image_offset(model):
    """The image canvas is padded by this much on each side (the first layer's reach)."""
    return model.first_kernel_size // 2


def _where(shape, position):
    """Flat raster position -> (row, column, channel)."""
    _, width, channels = shape
    return position // (width * channels), (position // channels) % width, position % channels


def init_state(model, shape, num):
    """The empty cache for `num` images of `shape` (H, W, C); unwritten pixels hold 0, which
    the masks keep from reaching any output. `model` is a PixelCNN or GatedPixelCNN."""
    height, width, c = shape
    o, n, dtype = _image_offset(model), model.hidden, model.dtype
    state = {'image': jnp.zeros((num, height + 2 * o, width + 2 * o, c), jnp.float32)}
    if isinstance(model, GatedPixelCNN):
        ins = [c] + [n] * (model.num_layers - 1)
        state['v_rows'] = [jnp.zeros((num, p + 1, width + 2 * p, f), dtype)
                           for p, f in zip(_pads(model), ins)]
        state['v_above'] = [jnp.zeros((num, width, 2 * n), dtype) for _ in ins]
        state['h_row'] = [jnp.zeros((num, width + p, n), dtype) for p in _pads(model)[1:]]
    else:
        p = model.kernel_size // 2
        state['canvases'] = [jnp.zeros((num, height + 2 * p, width + 2 * p, n), dtype)
                             for _ in range(model.num_layers)]
    return state


def write(model, state, shape, position, values):
    """The state with `values` (B,) (in [-1, 1] units) written into its image at flat raster
    `position` (row * W * C + column * C + channel)."""
    i, j, c = _where(shape, position)
    o = _image_offset(model)
    update = values.astype(jnp.float32)[:, None, None, None]
    return {**state, 'image': jax.lax.dynamic_update_slice(
        state['image'], update, (0, i + o, j + o, c))}


def step(model, params, state, shape, position, labels=None):
    """(outputs (B, P) float32 at flat raster `position`, the updated state): the full model's
    outputs there, given the values written at every earlier position. Call it once per
    position, in raster order (a row's first call also advances the vertical stack).

    params: the model's params (boxed or not); shape: (H, W, C); position may be traced;
    labels: (B,) ints, required iff the model is class-conditional.
    """
    if model.num_classes and labels is None:
        raise ValueError('this model is class-conditional: pass labels')
    params = nn.meta.unbox(params)
    i, j, c = _where(shape, position)
    if isinstance(model, GatedPixelCNN):
        state = jax.lax.cond((i > 0) & (j == 0) & (c == 0),
                             lambda s: _gated_row(model, params, s, i - 1, labels),
                             lambda s: s, state)
        outputs, state = _gated_pixel(model, params, state, i, j, labels)
    else:
        outputs, state = _pixelcnn_pixel(model, params, state, i, j, labels)
    return jax.lax.dynamic_index_in_dim(outputs, c, axis=1, keepdims=False), state


def _gated_row(model, params, state, row, labels):
    """Run the vertical stack on the completed `row`: keep its pre-activations (what the
    horizontal stack reads, shifted down a row) and push it into each layer's row buffer."""
    o = _image_offset(model)
    x = jax.lax.dynamic_index_in_dim(state['image'], row + o, axis=1, keepdims=False)
    x = x[:, o:x.shape[1] - o]
    rows, above = [], []
    for layer, (p, buffer) in enumerate(zip(_pads(model), state['v_rows'])):
        lp = params[f'layer_{layer}']
        padded = jnp.pad(x.astype(buffer.dtype), ((0, 0), (p, p), (0, 0)))
        buffer = jnp.concatenate([buffer[:, 1:], padded[:, None]], axis=1)
        kernel, bias = _kernel(lp['v_conv'], (p, p), None, model.data_channels, model.dtype)
        pre = jax.lax.conv_general_dilated(
            buffer, kernel, (1, 1), 'VALID', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))[:, 0]
        pre = pre + bias + _class_bias(lp, 'v_class_bias', labels, row=True)
        rows.append(buffer)
        above.append(pre.astype(model.dtype))
        x = gate(pre)
    return {**state, 'v_rows': rows, 'v_above': above}


def _gated_pixel(model, params, state, i, j, labels):
    """The horizontal stack and the head at pixel (i, j): (B, C, P) and the row buffers."""
    c, dtype = model.data_channels, model.dtype
    image, p0 = state['image'], _image_offset(model)
    x, skip, h_rows = None, 0.0, []
    for layer, p in enumerate(_pads(model)):
        lp, first = params[f'layer_{layer}'], layer == 0
        if first:   # the image row itself: its pixel (i, j) is written after this step
            taps = jax.lax.dynamic_slice(image, (0, i + p0, j, 0),
                                         (image.shape[0], 1, p + 1, c))[:, 0].astype(dtype)
        else:       # earlier layers' outputs at this row's pixels so far, and this one's now
            buffer = jax.lax.dynamic_update_slice_in_dim(
                state['h_row'][layer - 1], x[:, None].astype(dtype), j + p, axis=1)
            taps = jax.lax.dynamic_slice_in_dim(buffer, j, p + 1, axis=1)
            h_rows.append(buffer)
        kernel, bias = _kernel(lp['h_conv'], (0, p), 'A' if first else 'B', c, dtype)
        above = jax.lax.dynamic_index_in_dim(state['v_above'][layer], j, axis=1, keepdims=False)
        pre = (jnp.einsum('bkf,kfo->bo', taps, kernel[0]) + bias
               + _dense(above, lp['v_to_h'], None, c, dtype)
               + _class_bias(lp, 'h_class_bias', labels))
        gated = gate(pre)
        skip = skip + _dense(gated, lp['skip'], 'B', c, dtype)
        out = _dense(gated, lp['h_out'], 'B', c, dtype)
        x = out if first else x + out
    return _head(model, params, skip), {**state, 'h_row': h_rows}


def _pixelcnn_pixel(model, params, state, i, j, labels):
    """Every layer at pixel (i, j) from the k x k patches of the layer inputs: (B, C, P)."""
    c, dtype, n = model.data_channels, model.dtype, model.hidden
    k0, k = model.first_kernel_size, model.kernel_size
    b, p = state['image'].shape[0], k // 2
    patch = jax.lax.dynamic_slice(state['image'], (0, i, j, 0), (b, k0, k0, c))
    kernel, bias = _kernel(params['input_conv'], (k0 // 2, k0 // 2), 'A', c, dtype)
    x = jnp.einsum('bhwf,hwfo->bo', patch.astype(dtype), kernel) + bias
    canvases = []
    for block, canvas in enumerate(state['canvases']):
        bp = params[f'block_{block}']
        canvas = jax.lax.dynamic_update_slice(
            canvas, x[:, None, None].astype(canvas.dtype), (0, i + p, j + p, 0))
        patch = jax.lax.dynamic_slice(canvas, (0, i, j, 0), (b, k, k, n))
        kernel, bias = _kernel(bp['conv'], (p, p), 'B', c, dtype)
        h = (jnp.einsum('bhwf,hwfo->bo', nn.relu(patch), kernel) + bias
             + _class_bias(bp, 'class_bias', labels))
        x = x + _dense(nn.relu(h), bp['proj'], 'B', c, dtype)
        canvases.append(canvas)
    return _head(model, params, x), {**state, 'canvases': canvases}
