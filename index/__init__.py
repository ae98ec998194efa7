"""Binary code storage and retrieval (FAISS-backed)."""

from index.faiss_store import FaissCodeStore
from model.runtime.codes import hamming_distance_matrix, pack_codes, unpack_codes

__all__ = ["FaissCodeStore", "hamming_distance_matrix", "pack_codes", "unpack_codes"]
