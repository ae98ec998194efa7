"""Binary code storage and retrieval (FAISS-backed)."""

from index.codes import hamming_distance_matrix, pack_codes, unpack_codes
from index.faiss_store import FaissCodeStore

__all__ = ["FaissCodeStore", "hamming_distance_matrix", "pack_codes", "unpack_codes"]
