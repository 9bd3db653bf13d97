"""Small shared building blocks with no knowledge of smartyd's features."""
