"""Text encoders and image generators that plug into synthset's actors."""
