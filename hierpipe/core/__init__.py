"""Foundations every stage uses: errors, files, params, the component catalog, input checks,
the class hierarchy and the geometry of the embedding spaces."""
