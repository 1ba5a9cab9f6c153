"""What an audit shows: the HTML report, its tables and figures, audits compared over time,
and pictures of single samples."""
