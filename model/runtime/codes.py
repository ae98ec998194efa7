"""Packing helpers for binary hash codes.

Bit convention: a code of ``L`` bits is stored as ``L // 8`` uint8 bytes using
``numpy.packbits`` (big-endian within each byte); ``+1`` (or ``True``/``1``)
maps to bit 1 and ``-1`` (or ``False``/``0``) maps to bit 0.
"""

from __future__ import annotations

import numpy as np

__all__ = ["check_packed", "hamming_distance_matrix", "pack_codes", "unpack_codes"]


def pack_codes(codes: np.ndarray) -> np.ndarray:
    """Pack an ``n x L`` array of {-1,+1} (or {0,1}/bool) codes into ``n x L/8`` uint8."""
    arr = np.asarray(codes)
    if arr.ndim != 2:
        raise ValueError(f"codes must be 2-D (n x L), got shape {arr.shape}")
    n, bits = arr.shape
    if bits == 0 or bits % 8 != 0:
        raise ValueError(f"code length must be a positive multiple of 8, got {bits}")
    if arr.dtype == np.bool_:
        bitarr = arr
    else:
        if not np.issubdtype(arr.dtype, np.number):
            raise ValueError(f"codes must be numeric or bool, got dtype {arr.dtype}")
        if arr.size:
            uniq = np.unique(arr)
            if np.all(np.isin(uniq, (-1, 1))) or np.all(np.isin(uniq, (0, 1))):
                bitarr = arr > 0
            else:
                raise ValueError(f"codes must contain only {{-1,+1}} or only {{0,1}}; found values {uniq[:8].tolist()}")
        else:
            bitarr = arr.astype(bool)
    return np.packbits(bitarr.astype(np.uint8), axis=1).reshape(n, bits // 8)


def unpack_codes(packed: np.ndarray, bits: int) -> np.ndarray:
    """Unpack ``n x bits/8`` uint8 codes into an ``n x bits`` int8 array of {-1,+1}."""
    arr = np.asarray(packed)
    if bits <= 0 or bits % 8 != 0:
        raise ValueError(f"bits must be a positive multiple of 8, got {bits}")
    if arr.ndim != 2:
        raise ValueError(f"packed codes must be 2-D, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        raise ValueError(f"packed codes must be uint8, got dtype {arr.dtype}")
    if arr.shape[1] != bits // 8:
        raise ValueError(f"expected {bits // 8} bytes per code, got {arr.shape[1]}")
    unpacked = np.unpackbits(arr, axis=1).astype(np.int8)
    return (unpacked * 2 - 1).astype(np.int8)


def hamming_distance_matrix(a_packed: np.ndarray, b_packed: np.ndarray) -> np.ndarray:
    """Brute-force Hamming distances between packed codes (``len(a) x len(b)``, int64)."""
    a = np.asarray(a_packed)
    b = np.asarray(b_packed)
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError("packed code arrays must be 2-D")
    if a.dtype != np.uint8 or b.dtype != np.uint8:
        raise ValueError("packed code arrays must be uint8")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"byte widths differ: {a.shape[1]} vs {b.shape[1]}")
    ab = np.unpackbits(a, axis=1).astype(np.int32)
    bb = np.unpackbits(b, axis=1).astype(np.int32)
    # d = |a| + |b| - 2 <a, b>
    d: np.ndarray = (ab.sum(1)[:, None] + bb.sum(1)[None, :] - 2 * (ab @ bb.T)).astype(np.int64)
    return d


def check_packed(codes: np.ndarray, bits: int, what: str = "codes") -> np.ndarray:
    """`codes` as an ``n x bits/8`` uint8 array (one code of ``bits/8`` bytes becomes a row);
    ValueError naming `what` for any other shape or dtype."""
    code_bytes = bits // 8
    arr = np.asarray(codes)
    if arr.ndim == 1 and arr.shape[0] == code_bytes:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise ValueError(f"{what} must be 2-D (n x {code_bytes}), got shape {arr.shape}")
    if arr.dtype != np.uint8:
        raise ValueError(f"{what} must be packed uint8, got dtype {arr.dtype}")
    if arr.shape[1] != code_bytes:
        raise ValueError(f"{what} must have {code_bytes} bytes per code ({bits} bits), got {arr.shape[1]}")
    return arr
