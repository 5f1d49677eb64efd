"""The GAN of keras.io's "Customizing what happens in `fit()`" guides: a
`train_step` of its own, two optimizers held as attributes of the model,
`compile()` without a loss, and loss trackers of its own in `metrics`.

The guides write this step per backend: with `tf.GradientTape`
(custom_train_step_in_tensorflow.py) and with `torch.autograd`
(custom_train_step_in_torch.py), both on MNIST. Here on the digits (8x8),
with the small dense generator and discriminator the test can afford. The
JAX guide has no GAN, so this program runs on TensorFlow and PyTorch.
"""

import common
import keras
from keras import layers, ops

keras.utils.set_random_seed(0)
latent_dim = 16
x, _ = common.digits(n=512)

discriminator = keras.Sequential(
    [keras.Input((64,)), layers.Dense(32), layers.LeakyReLU(negative_slope=0.2), layers.Dense(1)],
    name="discriminator",
)
generator = keras.Sequential(
    [keras.Input((latent_dim,)), layers.Dense(32), layers.LeakyReLU(negative_slope=0.2),
     layers.Dense(64, activation="sigmoid")],
    name="generator",
)


class GAN(keras.Model):
    def __init__(self, discriminator, generator, latent_dim):
        super().__init__()
        self.discriminator = discriminator
        self.generator = generator
        self.latent_dim = latent_dim
        self.d_loss_tracker = keras.metrics.Mean(name="d_loss")
        self.g_loss_tracker = keras.metrics.Mean(name="g_loss")
        self.seed_generator = keras.random.SeedGenerator(1337)
        self.built = True

    @property
    def metrics(self):
        return [self.d_loss_tracker, self.g_loss_tracker]

    def compile(self, d_optimizer, g_optimizer, loss_fn):
        super().compile()
        self.d_optimizer = d_optimizer
        self.g_optimizer = g_optimizer
        self.loss_fn = loss_fn

    def _samples(self, real_images):
        batch_size = ops.shape(real_images)[0]
        random_latent_vectors = keras.random.normal(
            shape=(batch_size, self.latent_dim), seed=self.seed_generator
        )
        generated_images = self.generator(random_latent_vectors)
        combined_images = ops.concatenate([generated_images, real_images], axis=0)
        labels = ops.concatenate(
            [ops.ones((batch_size, 1)), ops.zeros((batch_size, 1))], axis=0
        )
        # Add random noise to the labels - important trick!
        labels += 0.05 * keras.random.uniform(ops.shape(labels), seed=self.seed_generator)
        return batch_size, combined_images, labels

    def train_step(self, real_images):
        if keras.backend.backend() == "torch":
            return self._train_step_torch(real_images)
        return self._train_step_tensorflow(real_images)

    def _train_step_tensorflow(self, real_images):
        import tensorflow as tf

        batch_size, combined_images, labels = self._samples(real_images)
        # Train the discriminator
        with tf.GradientTape() as tape:
            predictions = self.discriminator(combined_images)
            d_loss = self.loss_fn(labels, predictions)
        grads = tape.gradient(d_loss, self.discriminator.trainable_weights)
        self.d_optimizer.apply_gradients(zip(grads, self.discriminator.trainable_weights))

        random_latent_vectors = keras.random.normal(
            shape=(batch_size, self.latent_dim), seed=self.seed_generator
        )
        misleading_labels = ops.zeros((batch_size, 1))
        # Train the generator (note that we should *not* update the weights
        # of the discriminator)!
        with tf.GradientTape() as tape:
            predictions = self.discriminator(self.generator(random_latent_vectors))
            g_loss = self.loss_fn(misleading_labels, predictions)
        grads = tape.gradient(g_loss, self.generator.trainable_weights)
        self.g_optimizer.apply_gradients(zip(grads, self.generator.trainable_weights))

        self.d_loss_tracker.update_state(d_loss)
        self.g_loss_tracker.update_state(g_loss)
        return {"d_loss": self.d_loss_tracker.result(), "g_loss": self.g_loss_tracker.result()}

    def _train_step_torch(self, real_images):
        batch_size, combined_images, labels = self._samples(real_images)
        # Train the discriminator
        self.zero_grad()
        predictions = self.discriminator(combined_images)
        d_loss = self.loss_fn(labels, predictions)
        d_loss.backward()
        grads = [v.value.grad for v in self.discriminator.trainable_weights]
        self.d_optimizer.apply(grads, self.discriminator.trainable_weights)

        random_latent_vectors = keras.random.normal(
            shape=(batch_size, self.latent_dim), seed=self.seed_generator
        )
        misleading_labels = ops.zeros((batch_size, 1))
        # Train the generator (note that we should *not* update the weights
        # of the discriminator)!
        self.zero_grad()
        predictions = self.discriminator(self.generator(random_latent_vectors))
        g_loss = self.loss_fn(misleading_labels, predictions)
        g_loss.backward()
        grads = [v.value.grad for v in self.generator.trainable_weights]
        self.g_optimizer.apply(grads, self.generator.trainable_weights)

        self.d_loss_tracker.update_state(d_loss)
        self.g_loss_tracker.update_state(g_loss)
        return {"d_loss": self.d_loss_tracker.result(), "g_loss": self.g_loss_tracker.result()}


gan = GAN(discriminator=discriminator, generator=generator, latent_dim=latent_dim)
gan.compile(
    d_optimizer=keras.optimizers.Adam(learning_rate=0.0003),
    g_optimizer=keras.optimizers.Adam(learning_rate=0.0003),
    loss_fn=keras.losses.BinaryCrossentropy(from_logits=True),
)
# No validation: the suite watches the generator's loss.
history = gan.fit(
    x, epochs=4, batch_size=64, verbose=0, shuffle=common.shuffle(),
    callbacks=common.callbacks(monitor="g_loss", mode="min", probe_key="d_loss"),
)
common.finish(gan, [history])
