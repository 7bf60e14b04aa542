"""Training-side code for edgewatch: datasets, model training and export."""
