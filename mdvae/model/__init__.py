"""The generative and inference models of stage 2, from the small parts up: Gaussian
helpers, the observation model p(x_t | ...), the priors, the posteriors, then MDVAE and its
unimodal baseline DSAE, and the emotion head reading w."""
