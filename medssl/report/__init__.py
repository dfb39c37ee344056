"""Stage 6, reports: Tables 1/2, the statistics behind their marks, figures and the HTML page; the CT track's tables."""
