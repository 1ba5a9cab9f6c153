"""What an audit reads: models, data sets, their specs and URIs, the builtin data and training,
and the sample selection."""
