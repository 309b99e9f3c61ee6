"""Building blocks shared by every model family: attention layers in the diffusers key layout, the
GEGLU feed-forward, timestep embeddings and norms. Lives low in the tree so the UNets (MEMO), the
DiT (LetsTalk) and the autoencoders import it upward, never each other."""
