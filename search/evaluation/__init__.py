"""What the test split says about the winner: metrics with intervals, pictures, Grad-CAM, the report."""
