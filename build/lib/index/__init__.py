"""Galleries of binary codes: code stores (FAISS, Milvus) behind one interface, the journal,
the one gallery search and the indexing pipeline. Importing the package loads no backend."""
