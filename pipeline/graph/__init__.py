"""Everything about the kernel G, one concept a module:

- `batch`: G over one mini-batch's tokens (the paper's kernel): cosine k-NN + pixel graph,
  degree-normalised, kept factored (`BatchKernel`);
- `dataset`: the dataset-wide k-NN graph of a cached split (FAISS, Zarr store), the split's
  normalised G built from it, and training batches of it (`DatasetGraph`);
- `spectral`: exact eigenvectors of G, their Nystrom extension to new tokens, and the measures
  that compare psi with them.
Arrays and Zarr stores only: the workflow stages built on them (rules `eigenvectors`, `nystrom`,
`align` and the spectral methods' fits) are in pipeline/reference.py.
"""
