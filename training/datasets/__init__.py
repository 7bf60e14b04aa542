"""Dataset folder readers: turning a user's folder of files into training samples."""
