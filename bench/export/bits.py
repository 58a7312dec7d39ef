"""Bits: packing signs into bytes and words, popcount, and the XNOR-popcount dot products of binary layers.

A +1 is bit 1, a -1 bit 0. On disk a tensor of signs is one flat stream of bits in C order, 8 to a byte, most
significant bit first (``numpy.packbits``' order), the last byte zero-padded: exactly ceil(N / 8) bytes. For
computing, each output channel's fan-in is re-packed into 64-bit words (int64), zero-padded at the end of the row;
padding bits are 0 in both operands, so they never count as a mismatch.

With a and w the bit rows of n signs, the dot product of the signs is n - 2 popcount(a XOR w) (each mismatch is a
-1 term, each match a +1). Convolutions zero-pad their input (as ``F.conv2d`` does on the simulated +-1 tensor):
a padded tap contributes 0, so each output position counts only its valid taps, v, and the dot product is
popcount(v) - 2 popcount((a XOR w) AND v).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

WORD = 64
#: popcount of every byte: the lookup the popcount of a word sums over its 8 bytes
_BYTE_POP = torch.tensor([bin(i).count("1") for i in range(256)], dtype=torch.int64)


def pack_signs(positive: Tensor) -> np.ndarray:
    """The bit stream of a boolean tensor (True = +1), C order: ceil(numel / 8) bytes."""
    return np.packbits(positive.detach().cpu().reshape(-1).numpy().astype(np.uint8))


def unpack_signs(stream: np.ndarray | Tensor, shape: tuple[int, ...]) -> Tensor:
    """The boolean tensor (True = +1) of ``shape`` from its bit stream."""
    data = stream.numpy() if isinstance(stream, Tensor) else stream
    n = int(np.prod(shape)) if shape else 1
    return torch.from_numpy(np.unpackbits(data.astype(np.uint8), count=n).astype(bool)).reshape(shape)


def pack_words(bits: Tensor) -> Tensor:
    """Pack the last dimension of a boolean tensor into int64 words (bit j of word k is element 64 k + j)."""
    n = bits.shape[-1]
    words = -(-n // WORD)
    padded = torch.zeros(*bits.shape[:-1], words * WORD, dtype=torch.int64, device=bits.device)
    padded[..., :n] = bits.to(torch.int64)
    shifts = torch.arange(WORD, dtype=torch.int64, device=bits.device)
    # bit 63 lands in the sign bit: the sum of distinct powers of two wraps exactly as the bit pattern intends
    return (padded.view(*bits.shape[:-1], words, WORD) << shifts).sum(-1)


def popcount(words: Tensor) -> Tensor:
    """Set bits per int64 word, by the SWAR bit tricks (integer only). Shifts of a negative word are arithmetic:
    each mask clears the bits they drag in, and the final multiply wraps as the bit pattern intends."""
    x = words - ((words >> 1) & 0x5555555555555555)
    x = (x & 0x3333333333333333) + ((x >> 2) & 0x3333333333333333)
    x = (x + (x >> 4)) & 0x0F0F0F0F0F0F0F0F
    return (x * 0x0101010101010101) >> 56


def popcount_table(words: Tensor) -> Tensor:
    """The same count by a byte lookup: the slow, obvious reference the SWAR count is tested against."""
    table = _BYTE_POP.to(words.device)
    return table[words.contiguous().view(torch.uint8).long()].view(*words.shape, 8).sum(-1)


def xnor_linear(a_words: Tensor, w_words: Tensor, n: int, chunk: int = 256) -> Tensor:
    """Integer dot products (N, C) of the sign rows a (N, W words) and w (C, W words) of length n."""
    out = torch.empty(a_words.shape[0], w_words.shape[0], dtype=torch.int64, device=a_words.device)
    for i in range(0, a_words.shape[0], chunk):
        mism = popcount(a_words[i:i + chunk, None, :] ^ w_words[None]).sum(-1)
        out[i:i + chunk] = n - 2 * mism
    return out


def _patches(x: Tensor, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int],
             dilation: tuple[int, int]) -> tuple[Tensor, int, int]:
    """(N, L, C kh kw) patches of a (N, C, H, W) tensor, zero padded, in the order of a conv weight's (C, kh, kw);
    and the output height and width."""
    n, c, h, w = x.shape
    xp = torch.nn.functional.pad(x, (padding[1], padding[1], padding[0], padding[0]))
    kh, kw = kernel
    eh, ew = dilation[0] * (kh - 1) + 1, dilation[1] * (kw - 1) + 1
    p = xp.unfold(2, eh, stride[0]).unfold(3, ew, stride[1])  # (N, C, oh, ow, eh, ew)
    p = p[..., ::dilation[0], ::dilation[1]]
    oh, ow = p.shape[2], p.shape[3]
    return p.permute(0, 2, 3, 1, 4, 5).reshape(n, oh * ow, c * kh * kw), oh, ow


def xnor_conv2d(bits: Tensor, w_words: Tensor, kernel: tuple[int, int], stride: tuple[int, int],
                padding: tuple[int, int], dilation: tuple[int, int], chunk: int = 16) -> Tensor:
    """Integer convolution (N, C_out, oh, ow) of a boolean (N, C, H, W) sign tensor with packed filters (C_out, W
    words, each the filter's (C, kh, kw) in C order), zero padding counted as no tap."""
    n = bits.shape[0]
    ones = torch.ones(1, *bits.shape[1:], dtype=torch.uint8, device=bits.device)
    valid, oh, ow = _patches(ones, kernel, stride, padding, dilation)
    v_words = pack_words(valid[0].bool())  # (L, W): which taps of each output position lie inside the image
    v_count = popcount(v_words).sum(-1)  # (L,)
    out = torch.empty(n, w_words.shape[0], oh * ow, dtype=torch.int64, device=bits.device)
    for i in range(0, n, chunk):
        a, _, _ = _patches(bits[i:i + chunk].to(torch.uint8), kernel, stride, padding, dilation)
        a_words = pack_words(a.bool())  # (n, L, W)
        mism = popcount((a_words[:, None] ^ w_words[None, :, None]) & v_words).sum(-1)  # (n, C_out, L)
        out[i:i + chunk] = v_count - 2 * mism
    return out.view(n, w_words.shape[0], oh, ow)
